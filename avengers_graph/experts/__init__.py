"""Everything about calling experts: strategies, clients, retries, timeouts, cache."""
