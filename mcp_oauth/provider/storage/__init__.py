"""The provider's storage: the schema, the database connection, and one store per concern
(clients, codes, tokens and their families, device codes, sign-in throttling), composed by
`store.Store`."""
