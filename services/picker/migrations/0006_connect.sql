-- Connected cloud accounts: OAuth tokens sealed with connect.token_key (XChaCha20-Poly1305,
-- the user and provider as associated data), and authorizations in flight (one use, 10 min).
CREATE TABLE IF NOT EXISTS connected_accounts (
    user_id    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider)
);
-- `binding`: SHA-256 of the cookie set on the browser that started the authorization; the
-- callback must come from that browser (no account linked through someone else's click).
CREATE TABLE IF NOT EXISTS oauth_states (
    state        TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    provider     TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    binding      TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_states_age ON oauth_states (created_at);
