"""The runtime: the Ray actor, the process (node), peers, the cluster, the CLI.

``compose.open_node`` is the composition root: it opens the journal and the store,
recovers the shard and wires the HTTP app (api/http) to it."""
