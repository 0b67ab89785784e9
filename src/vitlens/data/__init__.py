"""Pictures in, one neutral record out, and that record on the device: imageset (ImageSet and
its .npz), cifar and fetch (the official archives), folder, scan and decode (the user's own
pictures), images (decoding one picture, as predict and serve do), split, normalize, augment
and choice (which test images the figures and the explorer show)."""
