"""The names of TDM-R1's roles (docs/architecture.md, "Roles")."""

TEACHER = "teacher"
GENERATOR = "generator"
FAKE = "fake"
SURROGATE = "surrogate"
GENERATOR_EMA = "generator_ema"
SURROGATE_OLD = "surrogate_old"
SURROGATE_REF = "surrogate_ref"
TRAINED_ROLES = (GENERATOR, FAKE, SURROGATE)
EMA_SOURCES = {GENERATOR_EMA: GENERATOR, SURROGATE_OLD: SURROGATE, SURROGATE_REF: SURROGATE}
"""Each EMA role and the trained role it follows."""
