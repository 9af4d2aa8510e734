"""One APIRouter per area: retrieval, admin, health/info, metrics."""
