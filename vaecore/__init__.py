"""What training and serving share, with no torch and no grpc: the model-repository contract (`repository`) and
pure latent-space math (`latent`). The service image carries this package and `service/`, never `training/`."""
