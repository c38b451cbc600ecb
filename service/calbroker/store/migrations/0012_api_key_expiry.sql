-- `calbroker apps rotate-key --keep-old-for 24h`: the previous key keeps working until it expires
-- by itself, so an application can switch to the new key without a moment of failed requests.
-- NULL: the key does not expire (revoking it is still immediate).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
