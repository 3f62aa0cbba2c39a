pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgeface-demo"
// core: the spec contract, preprocessing, quantization, alignment matrix and matching in plain Kotlin/JVM,
// unit-tested against tests/data/vectors without an emulator. app: camera, detector, LiteRT and the UI.
include(":core", ":app")
