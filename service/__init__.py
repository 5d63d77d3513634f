"""vidserve: serving video perception models over REST and gRPC."""
