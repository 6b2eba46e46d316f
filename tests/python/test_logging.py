import kiln
from kiln import log


def test_sink_receives_engine_messages_at_level():
    got = []
    kiln.set_log_sink(lambda sev, msg: got.append((sev, msg)))
    try:
        kiln.set_log_level("info")
        net = kiln.Network()
        x = net.add_input("x", "float32", (2, 2))
        net.mark_output(net.add_activation(x, "relu"), "y")
        kiln.Builder().build(net, kiln.BuilderConfig(device="cpu"))
        kiln.set_log_level("error")
        log.log("warning", "filtered out")
    finally:
        kiln.set_log_sink(None)
        kiln.set_log_level("warning")
    assert any(sev == "INFO" and "builder:" in msg for sev, msg in got)
    assert not any("filtered out" in msg for _, msg in got)


def test_logging_sink_forwards_to_python_logging(caplog):
    kiln.set_log_sink(log.logging_sink)
    try:
        with caplog.at_level("WARNING", logger="kiln"):
            log.log("warning", "hello from kiln")
    finally:
        kiln.set_log_sink(None)
    assert "hello from kiln" in caplog.text
