-- The app's own tables: customer accounts, their users (the account's team), their
-- sessions, failed logins, signups, the links the app mails, the mails asked for,
-- invitations to a team and the audit trail.
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
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    -- When the user showed they read mail at this address (opened a link the app
    -- mailed there); NULL: not yet. The default is for the users of a database made
    -- before the app verified addresses: `migrate` fills it in for them, so they count
    -- as verified. The app itself always writes the column.
    "email_verified_at" TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    -- What the user may do in the account (app/auth.py): an owner everything, an
    -- editor add, change, delete and import records, a viewer only read them. The
    -- default is for the users of a database made before accounts had teams: each was
    -- alone in their account, so `migrate` makes them its owner. The app always writes it.
    "role" TEXT NOT NULL DEFAULT 'owner' CHECK ("role" IN ('owner', 'editor', 'viewer'))
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

-- The single-use links the app mails (app/tokens.py): to finish a sign-up, to verify an
-- address, to reset a password, to confirm a new address (purpose "email": "email" is
-- the new address). Only the SHA-256 of a token is stored (hex): the token
-- itself is only in the mail. Rows are kept a week past their expiry, so that an old
-- link still gets a page saying it was used or has expired, then pruned.
CREATE TABLE IF NOT EXISTS "app_token" (
    "hash" TEXT PRIMARY KEY,
    "purpose" TEXT NOT NULL CHECK ("purpose" IN ('signup', 'verify', 'reset', 'email')),
    "email" TEXT NOT NULL,  -- where the link was mailed
    "user_id" INTEGER REFERENCES "user"("id") ON DELETE CASCADE,  -- verify, reset
    "account_name" TEXT,  -- signup: the account to create
    "password_hash" TEXT,  -- signup: the password chosen
    "expires_at" TEXT NOT NULL,
    "used_at" TEXT,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS "app_token_user_id" ON "app_token" ("user_id");

-- One row per mail sent because someone asked (a sign-up, a reset, a resent link), to
-- limit them per recipient and per client address. Old rows are pruned.
CREATE TABLE IF NOT EXISTS "app_mail_request" (
    "id" INTEGER PRIMARY KEY,
    "email" TEXT NOT NULL,
    "address" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS "app_mail_request_email" ON "app_mail_request" ("email", "created_at");
CREATE INDEX IF NOT EXISTS "app_mail_request_address" ON "app_mail_request" ("address", "created_at");

-- Invitations to join an account's team (app/team.py): the owner names an address and a
-- role; the link mailed there carries a random token, of which only the SHA-256 is kept
-- (hex). An invitation works once, until it expires or the owner withdraws it (a
-- withdrawn one is deleted). Rows are kept a week past their expiry, then pruned.
CREATE TABLE IF NOT EXISTS "app_invitation" (
    "hash" TEXT PRIMARY KEY,
    "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE,
    "email" TEXT NOT NULL,  -- stored lower-case
    "role" TEXT NOT NULL CHECK ("role" IN ('owner', 'editor', 'viewer')),
    "invited_by" TEXT NOT NULL,  -- the inviting owner's email
    "expires_at" TEXT NOT NULL,
    "used_at" TEXT,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS "app_invitation_account_id" ON "app_invitation" ("account_id", "created_at");

-- The audit trail (app/audit.py): one row per change to a record (made through a form
-- or an import) and per event of an account (logins, failed logins, password resets,
-- invitations, joins, role changes, removals). "changes" is a JSON object
-- {"field": [before, after]} of the values as stored. "actor" is the email of who did
-- it, kept as text so the row outlives the user. Append-only: the triggers below refuse
-- to change a row, or to delete one while its account exists (deleting an account, at
-- its owner's request, takes its trail with it).
CREATE TABLE IF NOT EXISTS "app_audit" (
    "id" INTEGER PRIMARY KEY,
    "account_id" INTEGER NOT NULL,  -- no REFERENCES: a row never changes with the account
    "actor" TEXT NOT NULL,
    "action" TEXT NOT NULL,  -- create, update, delete, import, login, login_failed, ...
    "entity" TEXT,  -- the record's table, for create, update and delete
    "record_id" INTEGER,
    "changes" TEXT,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS "app_audit_account_id" ON "app_audit" ("account_id", "id");
CREATE INDEX IF NOT EXISTS "app_audit_record" ON "app_audit" ("entity", "record_id", "id");

CREATE TRIGGER IF NOT EXISTS "app_audit_no_update" BEFORE UPDATE ON "app_audit"
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: rows cannot be changed');
END;

CREATE TRIGGER IF NOT EXISTS "app_audit_no_delete" BEFORE DELETE ON "app_audit"
WHEN EXISTS (SELECT 1 FROM "account" WHERE "id" = OLD."account_id")
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: rows cannot be deleted');
END;
