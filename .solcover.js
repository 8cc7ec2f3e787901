// solidity-coverage settings: measure the escrow and the collectors; test tokens and wallets are fixtures.
module.exports = {
  skipFiles: ["test/"],
};
