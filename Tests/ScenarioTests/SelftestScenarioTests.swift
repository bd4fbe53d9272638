import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// Every kernel selftest exists as a scenario, and the scenario and the Swift suite agree.
final class SelftestScenarioTests: XCTestCase {
    func testScenariosAgreeWithTheSwiftSuite() throws {
        var agreed = 0
        for variant in Variant.allCases {
            for t in SelftestSuite.all {
                let path = "\(packageRoot)/scenarios/selftests/\(variant.rawValue).\(t.name).hmm"
                let scenario = ScenarioInterpreter().run(path: path)
                // A test Linux 7.2 fails too (xfail): the scenario states what the kernel does
                // and passes; the Swift test fails at the kernel's assertion.
                let (outcome, message) = t.classify(variant, t.run(variant))
                let swift: ScenarioOutcome = t.needs != nil ? .skipped("needs huge pages (\(t.needs!))")
                    : outcome == .fail ? .failed(message ?? "") : .passed
                XCTAssertEqual(scenario, swift, "\(variant.rawValue).\(t.name)")
                if scenario == swift { agreed += 1 }
            }
        }
        XCTAssertEqual(agreed, 2 * SelftestSuite.all.count)
    }
}
