// Empty: this crate only carries package metadata (see Cargo.toml).
