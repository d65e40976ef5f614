"""`utils.machine`: the machine description that timings and preset metadata record."""

from keras_fusionseg.utils import machine

ZEN2 = """Architecture:            x86_64
CPU(s):                  2
Vendor ID:               AuthenticAMD
Model name:              AMD EPYC
CPU family:              23
Model:                   49
Thread(s) per core:      1
Core(s) per socket:      2
Socket(s):               1
Flags:                   fpu sse sse2 avx fma avx2 sha_ni
"""

ZEN4 = (
    ZEN2.replace("23", "25")
    .replace("49", "17")
    .replace("avx2 sha_ni", "avx2 avx512f avx512dq avx512_bf16 avx512_vnni")
)


def test_lscpu_text_gives_model_family_isa_and_cores():
    zen2 = machine.describe_machine(ZEN2, onednn=False)
    zen4 = machine.describe_machine(ZEN4, onednn=False)
    assert zen2 == {
        "cpu": "AMD EPYC",
        "model": "49",
        "family": "23",
        "isa": "AVX2",
        "cores": 2,
        "physical_cores": 2,
        "onednn": None,
        "source": "lscpu",
    }
    assert (zen4["model"], zen4["family"], zen4["isa"]) == ("17", "25", "AVX-512 (bf16)")


def test_widest_isa_wins_whatever_the_flag_order():
    assert machine.vector_isa("avx512f fma avx2") == "AVX-512"
    assert machine.vector_isa("amx_tile amx_bf16 avx512_bf16 avx2") == "AMX"
    assert machine.vector_isa("fp asimd evtstrm") == "NEON"
    assert machine.vector_isa("sse2") is None
    assert machine.vector_isa(None) is None


def test_label_names_what_tells_two_epycs_apart():
    info = {**machine.describe_machine(ZEN4, onednn=False), "onednn": True}
    assert machine.machine_label(info) == (
        "AMD EPYC (family 25 model 17, AVX-512 (bf16), 2 cores, oneDNN on)"
    )


def test_this_machine_is_described():
    info = machine.describe_machine()
    assert info["cpu"] and info["cores"] >= 1
    assert info["onednn"] in (True, False, None)
