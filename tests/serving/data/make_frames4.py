import numpy as np
import tensorflow as tf

w = tf.constant(np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32))
@tf.function(input_signature=[tf.TensorSpec([1, None], tf.float32)])
def f(x):
    frames = tf.reshape(x, [-1, 4])        # 4-sample frames: a constant target shape, checked when prepared
    return tf.reduce_mean(tf.matmul(frames, w), axis=0, keepdims=True)
conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
open("dyn4.tflite", "wb").write(conv.convert())
