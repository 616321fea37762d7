
-- Every config request received; the newest per (host, key) is the item's
-- `config`, and only the newest may be PENDING.
CREATE TABLE config_requests (
    rid        INTEGER PRIMARY KEY AUTOINCREMENT,
    host       TEXT NOT NULL,
    key        TEXT NOT NULL,
    target     REAL NOT NULL,
    expected   REAL,
    audit      TEXT NOT NULL,    -- JSON array of strings
    id         TEXT,             -- the requester's id, as JSON
    status     TEXT NOT NULL,    -- PENDING | SUCCESS | FAILED
    lastclock  INTEGER NOT NULL, -- received, Unix seconds
    reason     TEXT,
    expires_ms INTEGER NOT NULL, -- Unix milliseconds after which a PENDING request fails
    written    INTEGER NOT NULL DEFAULT 0, -- a write may have reached the device
    finished   INTEGER           -- when it became SUCCESS or FAILED, Unix seconds
);
CREATE INDEX config_requests_item ON config_requests(host, key, rid);
CREATE INDEX config_requests_pending ON config_requests(status) WHERE status = 'PENDING';
-- The last value of every trigger, so a restart neither repeats nor loses an event.
CREATE TABLE trigger_states (
    triggerid  INTEGER PRIMARY KEY,
    value      TEXT NOT NULL,      -- OK | problem | unknown
    lastchange INTEGER NOT NULL    -- 0: never changed
);
CREATE TABLE events (
    eventid       INTEGER PRIMARY KEY AUTOINCREMENT,
    triggerid     INTEGER NOT NULL,
    host          TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    clock         INTEGER NOT NULL,
    description   TEXT NOT NULL,
    severity      INTEGER NOT NULL,
    severity_text TEXT NOT NULL
);
CREATE INDEX events_clock ON events(clock);
CREATE INDEX events_item ON events(host, key);
CREATE TABLE acknowledgements (
    eventid INTEGER NOT NULL,
    clock   INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX acknowledgements_event ON acknowledgements(eventid);
-- Durable MQTT messages other than data (events, trigger states, config
-- statuses); a row is deleted at the broker's PUBACK.
CREATE TABLE uplink (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT NOT NULL,    -- below the gateway's root, e.g. events, triggers/17
    payload  TEXT NOT NULL,
    retained INTEGER NOT NULL
);
-- Topics of the retained host metadata published on MQTT (R/hosts/<host>), so
-- that a host removed from the config gets its retained message cleared.
CREATE TABLE mqtt_hosts (
    topic TEXT PRIMARY KEY
);
