"""The quantum data fabric itself, importable without FUSE.

Level 3 (CircuitFS) lives in `levels.circuits`, its search in `levels.search`. Heavy
libraries (Qiskit, Whoosh) load on first use so that `import levels` stays cheap.
"""
