"""/doodle's handwriting VAE: its fonts, glyph data, augmentation, training, samples and evaluation."""
