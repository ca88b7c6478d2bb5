-- The registry: topics, their versioned JSON Schemas, and the mappings as loaded.

CREATE TABLE pgtide.topics (
    name                  text        PRIMARY KEY,
    description           text,
    compatibility         text        NOT NULL DEFAULT 'backward'
                                      CHECK (compatibility IN ('backward', 'none', 'forward', 'full')),
    active_schema_version integer     NOT NULL DEFAULT 0,
    -- 'file' topics are declared in mapping files and read-only through the API.
    owner                 text        NOT NULL DEFAULT 'api' CHECK (owner IN ('api', 'file')),
    source_file           text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtide.schema_versions (
    topic      text        NOT NULL REFERENCES pgtide.topics (name) ON DELETE CASCADE,
    version    integer     NOT NULL,
    schema     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, version)
);

-- Mappings as the running set sees them: file-defined ones mirrored on every
-- load, API-defined ones kept here as their YAML source.
CREATE TABLE pgtide.mappings (
    name        text        PRIMARY KEY,
    owner       text        NOT NULL CHECK (owner IN ('api', 'file')),
    source_file text,
    definition  jsonb       NOT NULL,
    source      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Dead letters are listed newest first and by kind.
CREATE INDEX dead_letters_kind ON pgtide.dead_letters (kind, id);
