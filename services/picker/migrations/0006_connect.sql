-- Connected cloud accounts: OAuth tokens sealed with connect.token_key (XChaCha20-Poly1305,
-- the user and provider as associated data), and authorizations in flight (one use, 10 min).
CREATE TABLE IF NOT EXISTS connected_accounts (
    user_id    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider)
);
CREATE TABLE IF NOT EXISTS oauth_states (
    state      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    verifier   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
