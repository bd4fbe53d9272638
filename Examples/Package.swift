// swift-tools-version:6.0
import PackageDescription

/// Programs built on swift-hmm's public API, as another package would build them: swift-hmm is
/// a dependency by path, and only its library products are used.
let package = Package(
    name: "swift-hmm-examples",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-hmm", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "TinyMirror",
            dependencies: [
                .product(name: "MMCore", package: "swift-hmm"),
                .product(name: "HMM", package: "swift-hmm"),
                .product(name: "MMSync", package: "swift-hmm"),
            ]),
    ]
)
