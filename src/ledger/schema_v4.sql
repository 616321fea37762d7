-- Version 4 (the control side): the Sparkplug session's birth/death
-- sequence number, the last one handed out (one row).
CREATE TABLE sparkplug_session (
    id     INTEGER PRIMARY KEY CHECK (id = 0),
    bd_seq INTEGER NOT NULL
);
