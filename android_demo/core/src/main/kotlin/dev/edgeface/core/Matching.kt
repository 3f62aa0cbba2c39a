package dev.edgeface.core

import kotlin.math.sqrt

/** One 1:1 comparison: the cosine score, the threshold it was held against, and the outcome. */
data class Decision(val score: Double, val threshold: Double, val match: Boolean)

/**
 * Embedding post-processing and cosine matching, as `edgeface.runtime.match`.
 *
 * ArcFace-style models are trained with a cosine margin, so the spec's threshold is a cosine similarity of
 * L2-normalised embeddings, and "same person" means score >= threshold.
 */
object Matching {
    fun l2Normalize(v: FloatArray, eps: Double = 1e-12): FloatArray {
        var sq = 0.0
        for (x in v) sq += x.toDouble() * x
        val norm = maxOf(sqrt(sq), eps)
        return FloatArray(v.size) { (v[it] / norm).toFloat() }
    }

    fun cosine(a: FloatArray, b: FloatArray): Double {
        require(a.size == b.size) { "cannot compare embeddings of size ${a.size} and ${b.size}" }
        val na = l2Normalize(a)
        val nb = l2Normalize(b)
        var s = 0.0
        for (i in na.indices) s += na[i].toDouble() * nb[i]
        return s
    }

    fun verify(a: FloatArray, b: FloatArray, threshold: Double?): Decision {
        val t = threshold ?: throw IllegalStateException("the model's spec has no verification threshold")
        val score = cosine(a, b)
        return Decision(score, t, score >= t)
    }

    /** Float model output -> unit-length embedding, checking the size the spec promises. */
    fun embedding(output: FloatArray, spec: ModelSpec): FloatArray {
        check(output.size == spec.embeddingDim) {
            "the model returns ${output.size} values per face, its spec says embedding_dim=${spec.embeddingDim}"
        }
        return l2Normalize(output)
    }

    /** Integer model output -> dequantized with the spec's output quantization -> unit-length embedding. */
    fun embedding(output: ByteArray, spec: ModelSpec): FloatArray {
        val tq = spec.outputQuant ?: throw IllegalStateException("spec '${spec.name}' has no output quantization")
        return embedding(tq.dequantize(output), spec)
    }
}
