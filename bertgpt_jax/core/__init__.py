"""The base of everything, with no JAX: typed configuration (YAML + key=value), every error
type, and workdir paths that may be local or in object storage."""
