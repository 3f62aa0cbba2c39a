#!/usr/bin/env bash
# Runs the core module's unit tests without Gradle or Maven, with Debian's packaged Kotlin compiler, JUnit 4
# and Android's org.json (apt-get install kotlin junit4 libandroid-json-java). Gradle users run
# `./gradlew :core:test` instead; both read ../tests/data/vectors.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
vectors="$here/../../tests/data/vectors"
cp="/usr/share/java/com.android.json.jar:/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
kotlinc "$here/src/main/kotlin" "$here/src/test/kotlin" -cp "$cp" -d "$out" 2>&1 | grep -v -e '-Xverify' >&2 || true
test -f "$out/dev/edgeface/core/VectorsTest.class" || { echo "compilation failed" >&2; exit 1; }
java -cp "$out:$cp:/usr/share/java/kotlin-stdlib.jar" -Dedgeface.vectors="$vectors" \
    org.junit.runner.JUnitCore dev.edgeface.core.VectorsTest dev.edgeface.core.CoreTest dev.edgeface.core.PackTest
