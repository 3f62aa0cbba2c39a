package dev.edgeface.demo

import dev.edgeface.core.Layout
import dev.edgeface.core.Matching
import dev.edgeface.core.ModelSpec
import dev.edgeface.core.Preprocess
import dev.edgeface.core.TensorQuant
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Runs the exported TFLite model with the LiteRT Interpreter (XNNPACK on the CPU) on one aligned face.
 *
 * Mirrors `edgeface.runtime.backends.TfliteArtifact`: the spec's quantization first, the tensor's own
 * parameters as the fallback, and a clear error when the model and its spec disagree, instead of silently
 * feeding floats to an int8 model.
 */
class LiteRtEmbedder(model: ByteBuffer, val spec: ModelSpec, threads: Int) : AutoCloseable {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true))
    private val inputTensor: Tensor = interpreter.getInputTensor(0)
    private val outputTensor: Tensor = interpreter.getOutputTensor(0)
    private val inputQuant: TensorQuant? = spec.inputQuant ?: nativeQuant(inputTensor)
    private val outputQuant: TensorQuant? = spec.outputQuant ?: nativeQuant(outputTensor)
    private val input: ByteBuffer = ByteBuffer.allocateDirect(inputTensor.numBytes()).order(ByteOrder.nativeOrder())
    private val output: ByteBuffer = ByteBuffer.allocateDirect(outputTensor.numBytes()).order(ByteOrder.nativeOrder())

    init {
        val h = spec.inputHeight
        val w = spec.inputWidth
        val c = spec.channelOrder.channels
        val want = if (spec.layout == Layout.NCHW) intArrayOf(1, c, h, w) else intArrayOf(1, h, w, c)
        check(inputTensor.shape().contentEquals(want)) {
            "the model's input ${inputTensor.shape().contentToString()} does not match its spec " +
                "(${spec.layout} ${h}x$w)"
        }
        for ((side, tensor, quant) in listOf(
            Triple("input", inputTensor, inputQuant), Triple("output", outputTensor, outputQuant)
        )) {
            val integer = tensor.dataType() == DataType.INT8 || tensor.dataType() == DataType.UINT8
            check(!integer || quant != null) { "the model's $side is ${tensor.dataType()} but its spec has no quantization.$side" }
        }
        check(spec.inputQuant == null || inputTensor.dataType() != DataType.FLOAT32) {
            "the spec declares an ${spec.inputQuant?.dtype} input but the model takes float32"
        }
    }

    /** Aligned BGR face -> unit-length embedding, with the stage split the app shows on screen. */
    fun embed(alignedBgr: ByteArray, times: StageTimes): FloatArray {
        times.stage("preprocess") {
            val x = Preprocess.normalize(alignedBgr, spec)
            input.rewind()
            if (inputTensor.dataType() == DataType.FLOAT32) {
                input.asFloatBuffer().put(x)
            } else {
                input.put(inputQuant!!.quantize(x))
            }
            input.rewind()
        }
        times.stage("inference") {
            output.rewind()
            interpreter.run(input, output)
            output.rewind()
        }
        return times.stage("postprocess") {
            if (outputTensor.dataType() == DataType.FLOAT32) {
                val y = FloatArray(outputTensor.numElements())
                output.asFloatBuffer().get(y)
                Matching.embedding(y, spec)
            } else {
                val q = ByteArray(outputTensor.numElements())
                output.get(q)
                Matching.embedding(outputQuant!!.dequantize(q), spec)
            }
        }
    }

    override fun close() = interpreter.close()

    private fun nativeQuant(t: Tensor): TensorQuant? {
        val dtype = when (t.dataType()) {
            DataType.INT8 -> "int8"
            DataType.UINT8 -> "uint8"
            else -> return null
        }
        val p = t.quantizationParams()
        return TensorQuant(p.scale.toDouble(), p.zeroPoint, dtype)
    }
}
