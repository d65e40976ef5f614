"""The registered model names, written out for the tests that parametrise over them."""

# Written out, not read from the registry: a model that fails to register must fail the
# tests, not vanish from their parametrisations.
REGISTERED = (
    "deeplabv3",
    "deeplabv3plus",
    "dilated_aspp",
    "dunet",
    "encnet",
    "exfuse",
    "fastfcn_aspp",
    "fastfcn_encnet",
    "fastfcn_psp",
    "gcn",
    "gffnet",
    "pspnet",
)
