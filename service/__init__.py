"""The gRPC model-serving microservice for VAEs (see README.md)."""
