-- Admin consent is followed by the admin's OpenID Connect sign-in (design §7): the consent answer
-- names a tenant but is not signed, so that tenant is only a claim until an ID token proves it.
-- `flow_tenant` is the tenant the pending sign-in must prove; `consented_tenant` (0004) is set
-- only once it has been proven.
ALTER TABLE connect_links ADD COLUMN flow_tenant text;
