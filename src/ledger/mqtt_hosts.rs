//! The `mqtt_hosts` table: topics of the retained metadata published on
//! MQTT (`R/hosts/<host>`, and the upstream model's `R/things/...`,
//! `R/timeseries/...`, `R/datasets/...`), so that whatever is removed from
//! the config gets its retained message cleared, also across restarts.

use super::Ledger;
use crate::store::StoreError;

impl Ledger {
    /// Records the host topics just published and returns the recorded ones
    /// not among them (hosts gone from the config), sorted, in one transaction.
    pub async fn remember_host_topics(&self, topics: &[String]) -> Result<Vec<String>, StoreError> {
        let topics = topics.to_vec();
        self.transaction(move |tx, _| {
            let mut add =
                tx.prepare_cached("INSERT OR IGNORE INTO mqtt_hosts(topic) VALUES (?1)")?;
            for t in &topics {
                add.execute([t])?;
            }
            let mut st = tx.prepare_cached("SELECT topic FROM mqtt_hosts ORDER BY topic")?;
            let all = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all
                .into_iter()
                .filter(|t| !topics.contains(t))
                .collect::<Vec<_>>())
        })
        .await
    }

    /// Forgets host topics whose retained message the broker has cleared.
    pub async fn forget_host_topics(&self, topics: &[String]) -> Result<(), StoreError> {
        let topics = topics.to_vec();
        self.transaction(move |tx, _| {
            let mut st = tx.prepare_cached("DELETE FROM mqtt_hosts WHERE topic = ?1")?;
            for t in topics {
                st.execute([t])?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_host_topic_not_published_again_is_stale_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let l = super::super::tests::open(dir.path(), true);
        let both = ["R/hosts/a".to_string(), "R/hosts/b".to_string()];
        assert!(l.remember_host_topics(&both).await.unwrap().is_empty());
        let stale = l.remember_host_topics(&both[..1]).await.unwrap();
        assert_eq!(stale, vec!["R/hosts/b".to_string()]);
        l.forget_host_topics(&stale).await.unwrap();
        assert!(l.remember_host_topics(&both[..1]).await.unwrap().is_empty());
    }
}
