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


def random_resized_crop(image, size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None):
    """Crop a random area fraction ``scale`` and aspect ``ratio`` of the image, resize to ``size``.

    As torchvision's ``RandomResizedCrop`` used by the paper: the crop box is drawn
    by ``tf.image.sample_distorted_bounding_box`` (falls back to the whole image after
    its attempts fail). ``seed`` is a stateless seed of shape (2,) or None.
    """
    shape = tf.shape(image)
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    arguments = dict(
        bounding_boxes=whole_image,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    if seed is None:
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(shape, **arguments)
    else:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(shape, seed=seed, **arguments)
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bilinear", antialias=True)


def train_preprocess(image, size=224, seed=None):
    """Random resized crop to ``size`` and a random horizontal flip; float32 in [0, 255]."""
    if seed is None:
        crop = random_resized_crop(image, size)
        flipped = tf.image.random_flip_left_right(crop)
    else:
        seed = tf.convert_to_tensor(seed, tf.int64)
        crop = random_resized_crop(image, size, seed=seed)
        flipped = tf.image.stateless_random_flip_left_right(
            crop, seed=tf.random.experimental.stateless_fold_in(seed, 1)
        )
    return tf.clip_by_value(flipped, 0.0, 255.0)


def eval_preprocess(image, resize=256, size=224):
    """Resize the shorter side to ``resize`` and take the centre ``size`` x ``size`` crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(resize) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size, :]
    crop.set_shape([size, size, 3])
    return tf.clip_by_value(crop, 0.0, 255.0)
