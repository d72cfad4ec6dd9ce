"""The server-method benchmark's quick mode keeps working (no speed assertion)."""

from bench.methods_bench import main


def test_methods_bench_quick(capsys) -> None:  # type: ignore[no-untyped-def]
    out = main(["--quick"])
    text = capsys.readouterr().out
    assert "RATIO method speed-up" in text and "encrypted" in text
    assert out["ratio"] > 0
