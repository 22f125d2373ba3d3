"""Detectors as deployed: built from a config and checkpoint (`detector`), fed frames, run in one
of the named runtimes (`runtimes`), compared in pairs (`paired`). Import the submodules: this
package is imported by mmdp.latency and must stay light."""
