"""Request limits shared by the gateway and the stage services (documented in the protos and README)."""

MAX_K = 100
MAX_CANDIDATES = 1000
DEFAULT_CANDIDATES = 100
MAX_USER_ID_CHARS = 256
MAX_HISTORY = 1000
MAX_BATCH = 128
