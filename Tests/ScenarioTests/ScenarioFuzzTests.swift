import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// Mutated scripts never trap or hang: each run ends with exit status 0, 1 or 2.
final class ScenarioFuzzTests: XCTestCase {
    static let seeds = [
        "process p\nmmap 4pages prot=rw -> a\nfill a 4pages IDX\nopen 0 -> d\nread d a 4 expect ret=0 cpages=4 faults=1 mirror=IDX\nmigrate_to_dev d a 4\ncheck a 2pages IDX\nsnapshot d a 4 expect bytes=0x02*2,0x22*2\n",
        "process p\nmmap 2pages prot=rw shared -> s\nfork p -> c\nstore s 5 proc=c\nload s expect 5\nexit c\nmremap s 2pages 4pages maymove -> t\nload t+3pages expect bus\n",
        "let N = 3\nprocess p\nfile f size=N*4KiB\npwrite f 0 N*4KiB NEG\nmmap N*4KiB prot=r shared file=f -> m\ncheck m N*4KiB NEG\nrepeat N as i {\n  load m+i*4KiB+4 u32 expect 4294967295-1024*i\n}\nconcurrent {\n  thread { check m 4KiB NEG }\n}\n",
        "process p\nmmap 4pages prot=rw -> a\nopen 2 -> d\nexclusive d a 4 expect ret=0\ncheck_exclusive d a 4 expect ret=-EPERM\nstore a u32 1\ngup a 2 write pin longterm -> g\nunpin g\nmadvise a 4pages dontneed\npagemap a 4 expect none\nrelease d\n",
    ]

    static func mutate(_ s: String, _ rng: inout SeededRNG) -> String {
        var b = Array(s.utf8)
        let words = ["repeat 99999999 {", "}", "{", "0xFFFFFFFFFFFFFFFF", "18446744073709551616", "-1", "4TiB", "expect", "->", "=", "\"", "#", "IDX+", "concurrent {", "thread {", "\u{0}", "\u{FF}", "fill", "mmap", "munmap", "1page", "*", "/0", "("]
        for _ in 0..<Int(rng.next() % 2 + 1) {
            guard !b.isEmpty else { break }
            let i = Int(rng.next() % UInt64(b.count))
            switch rng.next() % 6 {
            case 0: b.remove(at: i)                                                // delete a byte
            case 1: b[i] = UInt8(truncatingIfNeeded: rng.next())                   // random byte (binary)
            case 2: b = Array(b[..<i])                                             // truncate
            case 3: b.insert(contentsOf: Array(words[Int(rng.next() % UInt64(words.count))].utf8) + [0x20], at: i)
            case 4: let j = Int(rng.next() % UInt64(b.count)); b.swapAt(i, j)      // swap two bytes
            default: b.insert(contentsOf: b[i..<min(b.count, i + 40)], at: i)     // duplicate a run
            }
        }
        return String(decoding: b, as: UTF8.self)
    }

    func testMutatedScriptsNeverTrapOrHang() {
        var rng = SeededRNG(seed: 2024)
        var outcomes = [0, 0, 0]
        for n in 0..<600 {
            let seed = ScenarioFuzzTests.seeds[n % ScenarioFuzzTests.seeds.count]
            let src = ScenarioFuzzTests.mutate(seed, &rng)
            let t0 = DispatchTimeLite.now()
            let (r, _) = runScript(src, file: "fuzz\(n).hmm", maxSteps: 50_000)
            outcomes[Int(r.exitCode)] += 1
            XCTAssertLessThan(DispatchTimeLite.now() - t0, 30_000_000_000, "mutant \(n) ran for over 30 s:\n\(src)")
        }
        print("fuzz outcomes: \(outcomes[0]) passed, \(outcomes[1]) failed expectations, \(outcomes[2]) malformed")
        XCTAssertGreaterThan(outcomes[2], 100)
        XCTAssertGreaterThan(outcomes[1] + outcomes[0], 20) // some mutants still run to the end
    }
}
