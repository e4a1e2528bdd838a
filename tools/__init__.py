"""Developer tools shared by the deploy tests and `make monitor`: a real Prometheus process, a traffic
generator for every RPC, and the Grafana dashboard's queries and their rendering. Not part of the service."""
