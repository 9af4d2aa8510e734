"""SeisBind retrieval service: FastAPI over ONNX Runtime and FAISS (DESIGN section 6). Imports no torch."""
