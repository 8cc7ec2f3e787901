// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title GasPriceGatedWallet
/// @notice Test-only hostile ERC-1271 wallet: the owner's signatures are valid only while `tx.gasprice`
///         is 0, which holds in an `eth_call` without fee fields and never in a mined transaction. A
///         voucher it signs passes every simulation and reverts on chain.
contract GasPriceGatedWallet is IERC1271 {
    /// @dev ERC-1271 failure value.
    bytes4 private constant _INVALID_SIGNATURE = 0xffffffff;

    /// @notice The EOA whose ECDSA signatures this wallet accepts (in calls only).
    // solhint-disable-next-line immutable-vars-naming
    address public immutable owner;

    /// @notice Deploys a wallet controlled by `owner_`.
    constructor(address owner_) {
        owner = owner_;
    }

    /// @inheritdoc IERC1271
    /// @dev Never reverts: a nonzero gas price, a malformed or a foreign signature yields 0xffffffff.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4 magicValue) {
        if (tx.gasprice != 0) return _INVALID_SIGNATURE;
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) return IERC1271.isValidSignature.selector;
        return _INVALID_SIGNATURE;
    }
}
