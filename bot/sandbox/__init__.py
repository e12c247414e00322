"""The local sandbox: a loopback Discord emulator and `easel demo`."""
