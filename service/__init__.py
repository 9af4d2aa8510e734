"""SeisBind retrieval service: FastAPI over ONNX Runtime and FAISS (docs/api.md). Imports no torch."""
