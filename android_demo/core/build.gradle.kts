// Plain Kotlin/JVM: everything here runs in `./gradlew :core:test` on any JDK, no emulator.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // Android ships org.json in the platform, so the app must not bundle a second copy; the JVM tests
    // need a real implementation.
    compileOnly(libs.json)
    testImplementation(libs.json)
    testImplementation(libs.junit)
}

tasks.test {
    // The vectors the Python tests also check (tools/make_test_vectors.py writes them).
    systemProperty("edgeface.vectors", rootDir.resolve("../tests/data/vectors").absolutePath)
    inputs.dir(rootDir.resolve("../tests/data/vectors"))
}
