-- The demo schema `pgtide dev` loads into its throwaway database. Idempotent.

CREATE TABLE IF NOT EXISTS public.users (
    id         bigserial PRIMARY KEY,
    org_id     bigint      NOT NULL DEFAULT 1,
    email      text        NOT NULL UNIQUE,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.orders (
    id         bigserial PRIMARY KEY,
    org_id     bigint         NOT NULL DEFAULT 1,
    user_id    bigint         REFERENCES public.users (id),
    status     text           NOT NULL DEFAULT 'pending',
    total      numeric(12, 2) NOT NULL DEFAULT 0,
    items      jsonb          NOT NULL DEFAULT '[]',
    created_at timestamptz    NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.sessions (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     bigint      NOT NULL DEFAULT 1,
    user_id    bigint      REFERENCES public.users (id),
    status     text        NOT NULL DEFAULT 'active',
    started_at timestamptz NOT NULL DEFAULT now()
);
-- Mappings that compare old and new values need the whole old row.
ALTER TABLE public.sessions REPLICA IDENTITY FULL;
ALTER TABLE public.orders REPLICA IDENTITY FULL;

INSERT INTO public.users (email, name)
VALUES ('ada@example.com', 'Ada'), ('grace@example.com', 'Grace')
ON CONFLICT (email) DO NOTHING;
