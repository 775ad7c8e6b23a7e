-- Device commands (Send Tab and the like, docs/accounts.md): queued for one device of an
-- account until it polls for them or they expire. The index is what the device pages by.
CREATE TABLE identity_commands (
    idx        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid        TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    command    TEXT NOT NULL,
    payload    TEXT NOT NULL,
    sender     TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX identity_commands_device ON identity_commands (device_id, idx);
CREATE INDEX identity_commands_uid ON identity_commands (uid);
