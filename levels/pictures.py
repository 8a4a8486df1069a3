"""Pictures for people who would rather look: circuit diagrams (Qiskit's matplotlib drawer)
and histograms of counts, as PNG bytes.

matplotlib's pyplot state is not thread-safe, and drawing runs in worker threads, so one
lock serializes it; the Agg backend needs no display. A circuit too large to draw in a
readable picture is refused at once with the reason, instead of drawing for minutes.
"""

import io
import threading

from levels.errors import TooBig

MAX_DRAWN_GATES = 400
HISTOGRAM_BARS = 64  # a histogram draws the most frequent outcomes, the rest as one bar
MAX_DRAWN_QUBITS = 40
_lock = threading.Lock()


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def circuit_png(circuit) -> bytes:
    if circuit.size() > MAX_DRAWN_GATES or circuit.num_qubits > MAX_DRAWN_QUBITS:
        raise TooBig(f"too large to draw ({circuit.num_qubits} qubits, {circuit.size()} "
                     f"operations; the limit is {MAX_DRAWN_QUBITS} and {MAX_DRAWN_GATES}): "
                     "read the .txt drawing instead")
    with _lock:
        import matplotlib

        matplotlib.use("Agg")
        return _png(circuit.draw(output="mpl"))


def histogram_png(counts: dict[str, int], title: str) -> bytes:
    with _lock:
        import matplotlib

        matplotlib.use("Agg")
        from qiskit.visualization import plot_histogram

        # 20,000 bars drew for minutes
        return _png(plot_histogram(counts, title=title, number_to_keep=HISTOGRAM_BARS))
