//! The server: ingest → domain → store → outlets. PLACEHOLDER: being written.
