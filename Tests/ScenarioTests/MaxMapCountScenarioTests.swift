import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// `machine max_map_count=N`: the limit as Linux 7.2 applies it, from a script.
final class MaxMapCountScenarioTests: XCTestCase {
    func testMaxMapCountFromAScript() {
        let (r, _) = runScript("""
            machine max_map_count=10
            process p
            mmap 3pages -> big
            repeat 5 as i {
              mmap 1page prot=r -> x[i] expect ok|ENOMEM
              mmap 1page prot=rw -> y[i] expect ok|ENOMEM
            }
            vmas expect count=11
            mmap 1page prot=rx expect ENOMEM
            munmap big+1page 1page expect ENOMEM
            mprotect big 1page r expect ENOMEM
            munmap big 1page
            vmas expect count=11
            invariants
            """, file: "mc.hmm")
        XCTAssertEqual(r, .passed)
    }
}
