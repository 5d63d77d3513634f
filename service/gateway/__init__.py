"""Gateways: REST (FastAPI) and gRPC, sharing the session pipeline and admission control."""
