-- Cronofy push channels (docs/cronofy.md): a channel of the outbox (issue 13) with flavour 'cronofy',
-- created with an account token and answering to that account. Cronofy signs with the application's
-- client secret, so each such channel holds the client secret as its signing secret (rotated with it).
CREATE TABLE cronofy_channels (
    channel_id      uuid PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    -- `chn_…`: what the SDKs see and close.
    public_id       text NOT NULL UNIQUE,
    account_id      text NOT NULL REFERENCES cronofy_accounts (account_id) ON DELETE CASCADE,
    callback_url    text NOT NULL,
    -- The filters as the application gave them (echoed back; an identical request finds this channel).
    calendar_ids    text[] NOT NULL DEFAULT '{}',
    only_managed    boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cronofy_channels_account_idx ON cronofy_channels (account_id, created_at);
