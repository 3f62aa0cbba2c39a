package dev.edgeface.demo

import android.os.SystemClock

/**
 * Wall-clock milliseconds per pipeline stage, for one frame, plus a running median per stage for the
 * screen: single frames jitter with thermal state and scheduling, a median of the last frames does not.
 */
class StageTimes {
    val ms = LinkedHashMap<String, Double>()

    inline fun <T> stage(name: String, block: () -> T): T {
        val t0 = SystemClock.elapsedRealtimeNanos()
        try {
            return block()
        } finally {
            ms[name] = (ms[name] ?: 0.0) + (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        }
    }
}

class LatencyBoard(private val window: Int = 30) {
    private val history = LinkedHashMap<String, ArrayDeque<Double>>()

    fun add(times: StageTimes) {
        for ((name, ms) in times.ms) {
            val h = history.getOrPut(name) { ArrayDeque() }
            h.addLast(ms)
            if (h.size > window) h.removeFirst()
        }
    }

    fun render(): String = history.entries.joinToString("\n") { (name, h) ->
        val sorted = h.sorted()
        "%-12s %7.1f ms  (median of %d)".format(name, sorted[sorted.size / 2], sorted.size)
    }
}
