-- The app's own tables: customer accounts, their users, their sessions, failed logins,
-- signups.
-- The entity tables, generated from the spec, are in schema.sql.
-- Times are ISO 8601 UTC text, e.g. 2024-01-31T08:30:00Z.

CREATE TABLE IF NOT EXISTS "account" (
    "id" INTEGER PRIMARY KEY,
    "name" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE IF NOT EXISTS "user" (
    "id" INTEGER PRIMARY KEY,
    "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE,
    "email" TEXT NOT NULL UNIQUE,  -- stored lower-case
    "password_hash" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS "user_account_id" ON "user" ("account_id");

-- One row per failed login, kept in the database so the limits hold across gunicorn
-- workers and restarts; "address" is the client's address, or "device:<id>" for a
-- browser known to the user (app/auth.py). Old rows are pruned.
CREATE TABLE IF NOT EXISTS "login_attempt" (
    "id" INTEGER PRIMARY KEY,
    "email" TEXT NOT NULL,
    "address" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS "login_attempt_email" ON "login_attempt" ("email", "created_at");
CREATE INDEX IF NOT EXISTS "login_attempt_address" ON "login_attempt" ("address", "created_at");

-- One row per signup (each costs a password hash), to limit them per client address.
-- Old rows are pruned. Internal tables start with app_, a prefix no entity may take.
CREATE TABLE IF NOT EXISTS "app_signup" (
    "id" INTEGER PRIMARY KEY,
    "address" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS "app_signup_address" ON "app_signup" ("address", "created_at");

-- One row per logged-in session; the signed session cookie carries its random id.
-- Logging out deletes the row, so a copy of the cookie is logged out too; a password
-- change deletes all of the user's rows. Rows unused for a session lifetime are pruned.
CREATE TABLE IF NOT EXISTS "app_session" (
    "id" TEXT PRIMARY KEY,
    "user_id" INTEGER NOT NULL REFERENCES "user"("id") ON DELETE CASCADE,
    "renewed_on" TEXT NOT NULL,  -- the day (UTC) the cookie was last renewed
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
) WITHOUT ROWID;  -- one lookup by id, the key itself

CREATE INDEX IF NOT EXISTS "app_session_user_id" ON "app_session" ("user_id");

-- Where each user logged in lately (the client address): the login limits per address
-- and per email never lock a user out there (app/auth.py). Old rows are pruned.
CREATE TABLE IF NOT EXISTS "app_known_address" (
    "user_id" INTEGER NOT NULL REFERENCES "user"("id") ON DELETE CASCADE,
    "address" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    PRIMARY KEY ("user_id", "address")
) WITHOUT ROWID;
