"""Image decoding and the paper's train / eval preprocessing, in the TensorFlow graph.

Outputs are float32 RGB with values in [0, 255]: the embedder applies its backbone's
own normalisation (caffe-style for ResNet50, (x - 127) / 128 for EfficientNet-Lite),
so the pipeline does not need to know the backbone.
"""

import tensorflow as tf


def decode_rgb(encoded):
    """Decode JPEG (RGB, grayscale or CMYK), PNG (with or without alpha), GIF or BMP to uint8 RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _sample_crop_window(shape, scale, ratio, seed):
    """(begin, size) of a random crop box, as torchvision's RandomResizedCrop draws it."""
    arguments = dict(
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(shape, **arguments)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(shape, seed=seed, **arguments)
    return begin, size


def resize_bilinear(image, size, antialias=True):
    """Bilinear resize of an (H, W, C) image to ``size`` (int: square, or (height, width)); float32.

    ``antialias=True`` is PIL's (and so torchvision's, the paper's) bilinear resize:
    the kernel widens when shrinking. When neither side shrinks, that kernel is the
    plain bilinear one, so the much cheaper non-antialiased op is used and gives the
    same values (tested to float rounding). ``antialias=False`` is TensorFlow's
    default resize: about 4x cheaper when shrinking, with some aliasing.
    """
    size = [size, size] if isinstance(size, int) else size
    if antialias:
        grows = tf.reduce_all(tf.shape(image)[:2] <= tf.convert_to_tensor(size))
        resized = tf.cond(
            grows,
            lambda: tf.image.resize(image, size, method="bilinear"),
            lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        )
    else:
        resized = tf.image.resize(image, size, method="bilinear")
    resized.set_shape([tf.get_static_value(side) for side in size] + [image.shape[-1]])
    return resized


def random_resized_crop(image, size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None, antialias=True):
    """Crop a random area fraction ``scale`` and aspect ``ratio`` of the image, resize to ``size``.

    As torchvision's ``RandomResizedCrop`` used by the paper: the crop box is drawn
    by ``tf.image.sample_distorted_bounding_box`` (falls back to the whole image after
    its attempts fail). ``seed`` is a stateless seed of shape (2,) or None. For
    ``antialias`` see :func:`resize_bilinear`.
    """
    begin, crop_size = _sample_crop_window(tf.shape(image), scale, ratio, seed)
    return resize_bilinear(tf.slice(image, begin, crop_size), size, antialias)


def _flip(image, seed):
    if seed is None:
        return tf.image.random_flip_left_right(image)
    return tf.image.stateless_random_flip_left_right(image, seed=tf.random.experimental.stateless_fold_in(seed, 1))


def _flip_and_resize(crop, size, seed, antialias):
    # Flipping commutes with the (symmetric) resize; flipping the uint8 crop moves less memory.
    resized = resize_bilinear(_flip(crop, seed), size, antialias)
    return tf.clip_by_value(resized, 0.0, 255.0)


def train_preprocess(image, size=224, seed=None, antialias=True):
    """Random resized crop to ``size`` and a random horizontal flip; float32 in [0, 255].

    ``antialias``: see :func:`resize_bilinear` (True = the paper's PIL resize).
    """
    seed = None if seed is None else tf.convert_to_tensor(seed, tf.int64)
    begin, crop_size = _sample_crop_window(tf.shape(image), (0.08, 1.0), (3 / 4, 4 / 3), seed)
    return _flip_and_resize(tf.slice(image, begin, crop_size), size, seed, antialias)


def train_image_from_bytes(encoded, size=224, seed=None, antialias=True):
    """:func:`train_preprocess` of encoded bytes; JPEGs decode only the crop window.

    Same crop box and flip as ``train_preprocess(decode_rgb(encoded), size, seed)``
    (JPEG decoding of a window may differ from a full decode by rounding), at a
    fraction of the decoding cost.
    """
    seed = None if seed is None else tf.convert_to_tensor(seed, tf.int64)

    def jpeg_window():
        begin, crop_size = _sample_crop_window(tf.io.extract_jpeg_shape(encoded), (0.08, 1.0), (3 / 4, 4 / 3), seed)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return _flip_and_resize(tf.image.decode_and_crop_jpeg(encoded, window, channels=3), size, seed, antialias)

    def other_format():
        return train_preprocess(decode_rgb(encoded), size, seed, antialias)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg_window, other_format)
    image.set_shape([size, size, 3])
    return image


def eval_resize(size):
    """The shorter side before the centre crop: 256 for 224, in the same proportion for other sizes."""
    return round(size * 256 / 224)


def eval_preprocess(image, resize=None, size=224, antialias=True):
    """Resize the shorter side to ``resize`` (default :func:`eval_resize` of ``size``), take the centre crop."""
    resize = eval_resize(size) if resize is None else resize
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(resize) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    resized = resize_bilinear(image, tf.unstack(new_shape), antialias)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size, :]
    crop.set_shape([size, size, 3])
    return tf.clip_by_value(crop, 0.0, 255.0)
