-- Who owns an API-defined mapping: the org of the token that created it
-- (NULL: an admin token without an org; then only admins see it) and that
-- token's role. Only the owning org (and admins) see or delete it; a mapping
-- an operator made stays limited to the tables of --api-mapping-tables.
ALTER TABLE pgtide.mappings ADD COLUMN org_id bigint;
ALTER TABLE pgtide.mappings ADD COLUMN created_role text;
