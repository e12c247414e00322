"""/fix's deblurring net: its training photos, degradations, training, benchmark and cost measures."""
